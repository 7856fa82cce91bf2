@echo off
rem Your settings for webui.bat. Start the web UI by running this file.

rem Python used to create the venv (default: python)
set PYTHON=
rem Folder of the venv (default: venv next to webui.bat); "-" runs without a venv
set VENV_DIR=
rem Command-line flags for the web UI, e.g. --api --listen --port 7860 --medvram
set COMMANDLINE_ARGS=

rem How torch is installed; run as "python -m TORCH_COMMAND", so it must start with pip
rem (default: pip install torch==2.13.0, which is CPU-only on Windows: for an NVIDIA GPU add
rem PyTorch's CUDA index, --index-url https://download.pytorch.org/whl/cuXXX, and launch once with --reinstall-torch)
rem set TORCH_COMMAND=pip install torch==2.13.0
rem Requirements file installed at launch (default: requirements.txt)
rem set REQS_FILE=requirements.txt
rem Package installed by --xformers (default: xformers==0.0.35)
rem set XFORMERS_PACKAGE=xformers==0.0.35

call "%~dp0webui.bat" %*
