@echo off
setlocal
rem Start the web UI on Windows, as AUTOMATIC1111's webui.bat does. Run webui-user.bat, which sets your
rem settings (PYTHON, VENV_DIR, COMMANDLINE_ARGS, TORCH_COMMAND, ...) and then calls this file.
rem   1. create the venv on the first run (VENV_DIR=- or SKIP_VENV=1: no venv) and upgrade pip in it;
rem   2. run python -u launch.py with the arguments, again each time the program leaves tmp\restart behind.
rem The exit code is the launcher's. Set WEBUI_NO_PAUSE=1 to skip the final pause.

if not defined PYTHON set PYTHON=python
if not defined VENV_DIR set "VENV_DIR=%~dp0venv"
if "%VENV_DIR%"=="-" set SKIP_VENV=1
if not defined LAUNCH_SCRIPT set "LAUNCH_SCRIPT=launch.py"
set SD_WEBUI_RESTART=tmp/restart

cd /d "%~dp0"

%PYTHON% -c "" >NUL 2>&1
if errorlevel 1 goto :no_python

if "%SKIP_VENV%"=="1" goto :launch
if exist "%VENV_DIR%\Scripts\python.exe" goto :activate_venv

echo Creating venv in "%VENV_DIR%"
%PYTHON% -m venv "%VENV_DIR%"
if errorlevel 1 goto :no_venv
"%VENV_DIR%\Scripts\python.exe" -m pip install --upgrade pip
if errorlevel 1 echo warning: could not upgrade pip in the new venv; going on with the bundled pip.

:activate_venv
call "%VENV_DIR%\Scripts\activate.bat"
set PYTHON="%VENV_DIR%\Scripts\python.exe"
echo venv %VENV_DIR%

:launch
if exist tmp\restart del /q tmp\restart
%PYTHON% -u "%LAUNCH_SCRIPT%" %*
set EXIT_CODE=%ERRORLEVEL%
if exist tmp\restart (
    echo Restarting
    goto :launch
)
goto :end

:no_python
echo.
echo Could not run Python with "%PYTHON%". Install Python 3.11 and tick "Add python.exe to PATH",
echo or set PYTHON in webui-user.bat to the full path of python.exe.
set EXIT_CODE=1
goto :end

:no_venv
echo.
echo Could not create the venv in "%VENV_DIR%" with %PYTHON%.
set EXIT_CODE=1
goto :end

:end
if not "%WEBUI_NO_PAUSE%"=="1" pause
exit /b %EXIT_CODE%
