"""Dataset commands: `data info`, `data synth`, `features`, `show-audio`.

    instrument-sweep data info synthetic                 # the built-in dataset (generated once)
    instrument-sweep data info ~/data/uiowa              # uiowa_train_data.npy ... or train_data.npy ...
    instrument-sweep data synth                          # fill the cache now
    instrument-sweep data synth --out data/synthetic     # a copy anywhere
    instrument-sweep features ~/uiowa_mis --out data/uiowa [--test-fraction 0.2] [--seed 0] [--workers N]
    instrument-sweep features ~/uiowa_mis --out data/uiowa --address auto     # over a Ray cluster
    instrument-sweep show-audio Flute/Flute.vib.ff.C4B4.aiff --out flute.png
"""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction) -> None:
    """Add the dataset commands to the `instrument-sweep` parser."""
    data = commands.add_parser("data", help="inspect or generate datasets")
    data_commands = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)

    info = data_commands.add_parser("info", help="samples, features, classes and per-class counts")
    info.add_argument("dataset", metavar="DIR", help="dataset directory, or 'synthetic' for the built-in one")
    info.set_defaults(func=cmd_data_info)

    synth = data_commands.add_parser("synth", help="generate the built-in synthetic-instrument dataset")
    synth.add_argument("--out", metavar="DIR", help="write here (default: fill the cache used by 'synthetic')")
    synth.add_argument("--files-per-class", type=int, help="recordings per instrument (default: as the built-in dataset)")
    synth.add_argument("--seed", type=int, help="random seed of the generator (default 0)")
    synth.add_argument("--workers", type=int, help="processes (default: all cores)")
    synth.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")
    synth.set_defaults(func=cmd_data_synth)

    features = commands.add_parser(
        "features", help="audio folders (one per instrument) -> a dataset of per-note MFCC features"
    )
    features.add_argument("audio_dir", metavar="AUDIO_DIR", help="one sub-folder of audio files per instrument")
    features.add_argument("--out", metavar="DIR", required=True, help="dataset directory to create")
    features.add_argument("--test-fraction", type=float, default=0.2, help="share of each class's files (default 0.2)")
    features.add_argument("--seed", type=int, default=0, help="random seed of the by-file split (default 0)")
    features.add_argument("--workers", type=int, help="processes (default: all cores)")
    features.add_argument("--address", metavar="RAY_ADDRESS", help="run as Ray tasks on this cluster ('auto', ...)")
    features.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")
    features.add_argument("--quiet", action="store_true", help="no progress bar")
    features.set_defaults(func=cmd_features)

    show = commands.add_parser("show-audio", help="the assignment's mel spectrogram of one audio file, as PNG")
    show.add_argument("file", metavar="FILE", help="audio file (AIFF, WAV, FLAC)")
    show.add_argument("--out", metavar="PNG", required=True, help="image to write")
    show.set_defaults(func=cmd_show_audio)


def cmd_data_info(args: argparse.Namespace) -> int:
    from trainables.data.dataset import describe
    from trainables.data.sources import resolve_dataset

    print(describe(resolve_dataset(args.dataset)))
    return 0


def cmd_data_synth(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from trainables.errors import InputError
    from trainables.data.synthetic import SynthConfig, builtin_dataset_dir, generate_synthetic

    overrides = {k: v for k, v in (("files_per_class", args.files_per_class), ("seed", args.seed)) if v is not None}
    config = replace(SynthConfig(), **overrides)
    if args.workers is not None and args.workers < 1:
        raise InputError("--workers", f"must be >= 1, got {args.workers}")
    if args.out is None:
        if overrides or args.workers:
            raise InputError("--out", "is required with --files-per-class, --seed or --workers")
        print(builtin_dataset_dir())
        return 0
    try:
        path = generate_synthetic(args.out, config, workers=args.workers, overwrite=args.overwrite)
    except FileExistsError as exc:
        raise InputError("--out", f"{exc}; pass --overwrite to replace it") from None
    print(path)
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    from trainables.data.audio_dataset import audio_to_dataset

    summary = audio_to_dataset(
        args.audio_dir,
        args.out,
        test_fraction=args.test_fraction,
        seed=args.seed,
        workers=args.workers,
        ray_address=args.address,
        progress=not args.quiet,
        overwrite=args.overwrite,
    )
    print(summary.text())
    return 0


def cmd_show_audio(args: argparse.Namespace) -> int:
    from trainables.data.spectrogram import save_mel_spectrogram

    print(save_mel_spectrogram(args.file, args.out))
    return 0
