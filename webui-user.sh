#!/usr/bin/env bash
#########################################################
# Your settings for webui.sh. Uncomment and edit a line to use it.
# webui.sh reads this file each time it starts.
#########################################################

# Command-line flags for the web UI, e.g. "--api --listen --port 7860 --medvram"
#export COMMANDLINE_ARGS=""

# Python used to create the venv (default: python3)
#python_cmd="python3"

# Folder of the venv, relative to this folder (default: venv); "-" runs without a venv
#venv_dir="venv"

# How torch is installed; run as "python -m $TORCH_COMMAND", so it must start with "pip"
# (default: pip install torch==2.13.0). Re-run it with --reinstall-torch.
#export TORCH_COMMAND="pip install torch==2.13.0"

# Requirements file installed at launch (default: requirements.txt)
#export REQS_FILE="requirements.txt"

# Package installed by --xformers (default: xformers==0.0.35)
#export XFORMERS_PACKAGE="xformers==0.0.35"

# webui.sh keeps freed memory in the process on Linux (MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_, 4 GiB):
# CPU steps up to ~1.8x faster, but the process does not shrink after a peak. Set 1 to keep glibc's defaults.
#export NO_MALLOC_TUNING=1

# Script run by webui.sh (default: launch.py)
#export LAUNCH_SCRIPT="launch.py"
