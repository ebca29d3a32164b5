"""An S3-compatible endpoint for tests: moto's standalone server on 127.0.0.1, a free port.

    with S3Server() as s3:                 # skips the test where moto's server is not installed
        s3.create_bucket("sweeps-bucket")
    with S3Server(host="10.92.0.1", iam=True) as s3:   # on a test network's bridge; unsigned requests refused
        s3.uri("sweeps-bucket/sweeps")     # s3://sweeps-bucket/sweeps?endpoint_override=127.0.0.1:PORT&scheme=http
        s3.endpoint_url                    # http://127.0.0.1:PORT (for AWS_ENDPOINT_URL)
        s3.env                             # fake credentials and region for the processes a test starts

The server runs in its own process (`python -m moto.server`; the test extra installs moto[s3] and
flask and flask-cors, which its server imports), ended with the block, also when a test fails;
everything it holds is in its memory. moto accepts any request by default, unsigned ones too; with
`iam` it authenticates every request as AWS does, against an IAM user it makes whose keys are
`env`'s, so a process without credentials is refused (moto answers 500 where S3 answers 403).
That user may do anything on S3: moto's evaluation of S3 policies is not AWS's (it denies
ListBucket and multipart uploads that AWS's s3:ListBucket and s3:PutObject allow), so an IAM
policy is not tested here.
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
    def __init__(self, host: str = "127.0.0.1", iam: bool = False) -> None:
        if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
            pytest.skip("needs moto's S3 server (pip install -e '.[test]' installs moto[s3], flask and flask-cors)")
        self.host, self.iam = host, iam
        self.port = free_port()
        self.endpoint = f"{host}:{self.port}"
        self.endpoint_url = f"http://{self.endpoint}"
        self.env = dict(CREDENTIALS)
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> "S3Server":
        self._proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      env={**os.environ, **self.env}, start_new_session=True)
        try:
            wait_until(lambda: http_status(self.endpoint_url) == 200 or self._proc.poll() is not None, 180,
                       "moto's S3 server")
            if self._proc.poll() is not None:
                raise RuntimeError(f"moto's server exited with {self._proc.returncode}")
            if self.iam:
                self._authenticate()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=10)

    def _authenticate(self) -> None:
        """An IAM user allowed all of S3, its keys in `env`; then moto authenticates every request."""
        import json
        import urllib.request

        import boto3

        iam = boto3.client("iam", endpoint_url=self.endpoint_url, region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
                           aws_access_key_id="testing", aws_secret_access_key="testing")
        iam.create_user(UserName="sweeps")
        iam.put_user_policy(UserName="sweeps", PolicyName="s3", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="sweeps")["AccessKey"]
        self.env = {**CREDENTIALS, "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
                    "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
        enforce = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset-auth", data=b"0", method="POST",
                                         headers={"Content-Type": "text/plain"})
        urllib.request.urlopen(enforce, timeout=120).close()

    def filesystem(self):
        import pyarrow.fs

        return pyarrow.fs.S3FileSystem(endpoint_override=self.endpoint, scheme="http",
                                       access_key=self.env["AWS_ACCESS_KEY_ID"],
                                       secret_key=self.env["AWS_SECRET_ACCESS_KEY"],
                                       region=self.env["AWS_DEFAULT_REGION"], allow_bucket_creation=True)

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
