"""Command-line flags with AUTOMATIC1111's names and meanings.

Nothing is parsed at import: ``webui.py`` and ``launch.py`` call :func:`build_parser` and :func:`parse_args`.
This module imports only the standard library, because ``launch.py`` uses it before torch is installed.

A1111 appends ``COMMANDLINE_ARGS`` (from ``webui-user.sh`` / ``webui-user.bat``) *after* the real command line;
:func:`full_argv` does the same. Unknown flags are an error that names the flag, as in A1111.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Mapping, Sequence

#: Flags that exist so A1111 users' ``COMMANDLINE_ARGS`` keep working, but that change nothing here.
#: Each maps to the reason shown once in the log.
ACCEPTED_WITHOUT_EFFECT: dict[str, str] = {
    "opt_split_attention_invokeai": "PyTorch SDPA is used instead",
    "disable_opt_split_attention": "PyTorch SDPA is used instead",
    "no_gradio_queue": "the job queue is always on",
    "update_check": "there is no update server to ask",
    "update_all_extensions": "extensions are not managed by the launcher",
    "skip_python_version_check": "no Python version check is made",
    "skip_version_check": "no version check is made",
}


def build_parser() -> argparse.ArgumentParser:
    """Build the parser for every flag webui.py and launch.py understand.

    Returns:
        A fresh ``argparse.ArgumentParser``; extensions may add their own flags before parsing.
    """
    parser = argparse.ArgumentParser(
        prog="webui.py",
        description="Stable Diffusion web UI (A1111-compatible flags).",
        allow_abbrev=False,
    )
    _add_path_flags(parser)
    _add_server_flags(parser)
    _add_device_flags(parser)
    _add_launch_flags(parser)
    _add_compat_flags(parser)
    return parser


def _add_path_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("paths")
    group.add_argument("--data-dir", type=str, default=None,
                       help="base for models/, embeddings/, outputs/, config.json, cache.json (default: the program dir)")
    group.add_argument("--models-dir", type=str, default=None, help="overrides <data-dir>/models")
    group.add_argument("--ckpt", type=str, default=None,
                       help="checkpoint to load at start; it is added to the checkpoint list")
    group.add_argument("--ckpt-dir", type=str, default=None, help="checkpoint folder (default: models/Stable-diffusion)")
    group.add_argument("--vae-dir", type=str, default=None, help="VAE folder (default: models/VAE)")
    group.add_argument("--vae-path", type=str, default=None, help="force this VAE file; disables the VAE setting")
    group.add_argument("--lora-dir", type=str, default=None, help="LoRA folder (default: models/Lora)")
    group.add_argument("--lyco-dir-backcompat", type=str, default=None,
                       help="old LyCORIS folder, also scanned for LoRA files (default: models/LyCORIS)")
    group.add_argument("--hypernetwork-dir", type=str, default=None,
                       help="hypernetwork folder (default: models/hypernetworks)")
    group.add_argument("--embeddings-dir", type=str, default=None,
                       help="textual-inversion embeddings folder (default: <data-dir>/embeddings)")
    group.add_argument("--textual-inversion-templates-dir", type=str, default=None,
                       help="prompt templates for embedding training")
    group.add_argument("--ui-settings-file", type=str, default=None, help="settings file (default: <data-dir>/config.json)")
    group.add_argument("--styles-file", type=str, action="append", default=None,
                       help="styles CSV file; may be given more than once (default: <data-dir>/styles.csv)")


def _add_server_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("server")
    group.add_argument("--listen", action="store_true", help="serve on 0.0.0.0 instead of 127.0.0.1")
    group.add_argument("--server-name", type=str, default=None, help="host name to serve on (overrides --listen)")
    group.add_argument("--port", type=int, default=None,
                       help="port to serve on (default 7860, or 7861 with --nowebui)")
    group.add_argument("--api", action="store_true", help="also serve the /sdapi/v1 API next to the web UI")
    group.add_argument("--nowebui", action="store_true", help="serve only the API (default port 7861)")
    group.add_argument("--api-auth", type=str, default=None,
                       help='HTTP Basic credentials for the API, "user:pass[,user2:pass2]"')
    group.add_argument("--api-log", action="store_true", help="log every API request")
    group.add_argument("--gradio-auth", type=str, default=None,
                       help='credentials for the web UI, "user:pass[,user2:pass2]"')
    group.add_argument("--gradio-auth-path", type=str, default=None,
                       help="file with web UI credentials, one per line or comma separated")
    group.add_argument("--cors-allow-origins", type=str, default=None, help="comma-separated allowed CORS origins")
    group.add_argument("--cors-allow-origins-regex", type=str, default=None, help="regex of allowed CORS origins")
    group.add_argument("--subpath", type=str, default=None, help="serve under this path behind a reverse proxy")
    group.add_argument("--autolaunch", action="store_true", help="open the web UI in the system browser at start")
    group.add_argument("--freeze-settings", action="store_true", help="make every setting read-only")
    group.add_argument("--timeout-keep-alive", type=int, default=30, help="HTTP keep-alive timeout in seconds")
    group.add_argument("--no-prompt-history", action="store_true", help="do not write params.txt")


def _add_device_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("device and memory")
    group.add_argument("--lowvram", action="store_true", help="stream the UNet to the GPU block by block")
    group.add_argument("--medvram", action="store_true",
                       help="keep only the model part in use (text encoder, UNet or VAE) on the GPU")
    group.add_argument("--lowram", action="store_true", help="load checkpoint weights straight to VRAM")
    group.add_argument("--xformers", action="store_true", help="install and use xformers attention")
    group.add_argument("--force-enable-xformers", action="store_true", help="use xformers even if the check fails")
    group.add_argument("--opt-sdp-attention", action="store_true", help="use PyTorch scaled-dot-product attention")
    group.add_argument("--opt-sdp-no-mem-attention", action="store_true",
                       help="PyTorch SDPA without the memory-efficient kernel (deterministic)")
    group.add_argument("--opt-channelslast", action="store_true", help="channels-last memory format for the UNet")
    group.add_argument("--opt-split-attention", action="store_true",
                       help="memory-saving sliced attention (instead of PyTorch SDPA)")
    group.add_argument("--opt-split-attention-v1", action="store_true", help="same as --opt-split-attention")
    group.add_argument("--opt-sub-quad-attention", action="store_true", help="same as --opt-split-attention")
    group.add_argument("--opt-compile", action="store_true",
                       help="compile the UNet with torch.compile (CUDA graphs where possible); survives LoRA switches")
    group.add_argument("--no-half", action="store_true", help="keep the model in fp32")
    group.add_argument("--no-half-vae", action="store_true", help="keep the VAE in fp32")
    group.add_argument("--precision", choices=("full", "half", "autocast"), default="autocast",
                       help="full: compute in fp32; half: force fp16; autocast (default): fp16 on CUDA")
    group.add_argument("--upcast-sampling", action="store_true",
                       help="fp16 weights, UNet computed in fp32 (for cards that produce NaNs in fp16)")
    group.add_argument("--use-cpu", type=str.lower, nargs="+", default=[],
                       help="run these on the CPU: all, sd, interrogate, gfpgan, esrgan, codeformer, swinir, scunet")
    group.add_argument("--device-id", type=str, default=None, help="CUDA device number to use")
    group.add_argument("--disable-nan-check", action="store_true", help="do not check generated latents for NaNs")
    group.add_argument("--disable-safe-unpickle", action="store_true",
                       help="accepted for A1111 compatibility; pickles are ALWAYS loaded with weights_only here")
    group.add_argument("--no-hashing", action="store_true", help="do not compute sha256 of model files")


def _add_launch_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("launch")
    group.add_argument("--skip-torch-cuda-test", action="store_true",
                       help="do not warn when CUDA is unavailable")
    group.add_argument("--reinstall-torch", action="store_true", help="run TORCH_COMMAND even if torch is installed")
    group.add_argument("--reinstall-xformers", action="store_true", help="reinstall xformers (with --xformers)")
    group.add_argument("--skip-install", action="store_true", help="do not install requirements at launch")
    group.add_argument("--skip-prepare-environment", action="store_true", help="skip all launch-time installs")
    group.add_argument("--no-download-sd-model", action="store_true",
                       help="with no checkpoint present, do not try to download SD 1.5 (the demo model is used)")
    group.add_argument("--demo", action="store_true",
                       help="generate (if needed) and load the tiny demo checkpoint; no download is attempted")
    group.add_argument("--skip-load-model-at-start", action="store_true",
                       help="load the checkpoint on first use instead of at start")
    group.add_argument("--loglevel", type=str, default=None, help="log level: DEBUG, INFO, WARNING, ERROR")
    group.add_argument("--log-startup", action="store_true", help="log the time of each start-up step")


def _add_compat_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("accepted for A1111 compatibility, without effect")
    for dest in ACCEPTED_WITHOUT_EFFECT:
        group.add_argument("--" + dest.replace("_", "-"), action="store_true",
                           help=f"no effect: {ACCEPTED_WITHOUT_EFFECT[dest]}")


def split_commandline_args(value: str, windows: bool | None = None) -> list[str]:
    """Split a ``COMMANDLINE_ARGS`` string into arguments.

    A1111 always splits in POSIX mode, which eats the back-slashes of unquoted Windows paths
    (``--ckpt-dir D:\\models`` becomes ``D:models``). On Windows we split in non-POSIX mode and strip
    the surrounding quotes instead, so those paths survive.

    Args:
        value: the raw environment string.
        windows: force the Windows rules (``None``: use them when running on Windows).
    """
    if windows is None:
        windows = os.name == "nt"
    if not windows:
        return shlex.split(value)
    parts = shlex.split(value, posix=False)
    return [p[1:-1] if len(p) >= 2 and p[0] == p[-1] and p[0] in "\"'" else p for p in parts]


def full_argv(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> list[str]:
    """The command line followed by ``COMMANDLINE_ARGS``, in A1111's order."""
    argv = list(sys.argv[1:] if argv is None else argv)
    environ = os.environ if environ is None else environ
    return argv + split_commandline_args(environ.get("COMMANDLINE_ARGS", ""))


class UnknownFlagError(SystemExit):
    """Raised (as an exit) when the command line holds a flag we do not know."""


def parse_args(argv: Sequence[str], parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    """Parse ``argv``; an unknown flag stops the program with a message naming it.

    Args:
        argv: arguments without the program name (see :func:`full_argv`).
        parser: a parser from :func:`build_parser`, possibly extended by extensions.
    """
    parser = parser or build_parser()
    args, unknown = parser.parse_known_args(list(argv))
    if unknown:
        message = (f"error: unknown command-line argument(s): {' '.join(unknown)}\n"
                   "Check COMMANDLINE_ARGS in webui-user.sh / webui-user.bat and the command line; "
                   "`python webui.py --help` lists every flag.\n")
        sys.stderr.write(message)
        raise UnknownFlagError(2)
    if args.medvram and args.lowvram:
        parser.error("--medvram and --lowvram exclude each other: choose one")
    if args.precision == "half" and (args.no_half or args.no_half_vae):
        parser.error("--precision half conflicts with --no-half / --no-half-vae")
    return args
