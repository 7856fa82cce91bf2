@echo off
rem Run the test suite on Windows in the same venv and with the same preparation as the web UI:
rem   run_tests.bat [pytest arguments]
rem It goes through webui-user.bat (your settings) and webui.bat, which run "launch.py --run-tests ...":
rem torch, requirements.txt and requirements-test.txt are installed when needed, then python -m pytest runs.
set WEBUI_NO_PAUSE=1
call "%~dp0webui-user.bat" --run-tests %*
exit /b %ERRORLEVEL%
