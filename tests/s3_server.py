"""An S3-compatible endpoint for tests: moto's standalone server on 127.0.0.1, a free port.

    with S3Server() as s3:                 # skips the test where moto's server is not installed
        s3.create_bucket("sweeps-bucket")
        s3.uri("sweeps-bucket/sweeps")     # s3://sweeps-bucket/sweeps?endpoint_override=127.0.0.1:PORT&scheme=http
        s3.endpoint_url                    # http://127.0.0.1:PORT (for AWS_ENDPOINT_URL)
        s3.env                             # fake credentials and region for the processes a test starts

The server runs in its own process (`python -m moto.server`; the test extra installs moto[s3] and
flask and flask-cors, which its server imports), ended with the block, also when a test fails;
everything it holds is in its memory.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from processes import free_port, http_status, wait_until

# moto accepts any credentials; pyarrow and boto need some, and a region.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


class S3Server:
    def __init__(self) -> None:
        if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
            pytest.skip("needs moto's S3 server (pip install -e '.[test]' installs moto[s3], flask and flask-cors)")
        self.port = free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self.endpoint_url = f"http://{self.endpoint}"
        self.env = dict(CREDENTIALS)
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> "S3Server":
        self._proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      env={**os.environ, **self.env}, start_new_session=True)
        try:
            wait_until(lambda: http_status(self.endpoint_url) == 200 or self._proc.poll() is not None, 60,
                       "moto's S3 server")
            if self._proc.poll() is not None:
                raise RuntimeError(f"moto's server exited with {self._proc.returncode}")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=10)

    def filesystem(self):
        import pyarrow.fs

        return pyarrow.fs.S3FileSystem(endpoint_override=self.endpoint, scheme="http", access_key="testing",
                                       secret_key="testing", region="us-east-1", allow_bucket_creation=True)

    def create_bucket(self, name: str) -> None:
        self.filesystem().create_dir(name)

    def uri(self, path: str) -> str:
        """s3://PATH with this endpoint in the query string (Ray's and pyarrow's own way)."""
        return f"s3://{path}?endpoint_override={self.endpoint}&scheme=http"

    def read_text(self, path: str) -> str:
        with self.filesystem().open_input_stream(path) as f:
            return f.read().decode()

    def files(self, path: str) -> list[str]:
        """Everything under `path`: objects and the folders they imply."""
        return [info.path for info in self._listing(path)]

    def objects(self, path: str) -> list[str]:
        """The objects under `path`."""
        import pyarrow.fs

        return [info.path for info in self._listing(path) if info.type == pyarrow.fs.FileType.File]

    def _listing(self, path: str):
        import pyarrow.fs

        return self.filesystem().get_file_info(pyarrow.fs.FileSelector(path, recursive=True, allow_not_found=True))
