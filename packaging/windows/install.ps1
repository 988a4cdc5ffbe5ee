# Installs drainer on a Windows VM: a virtual environment under C:\Program Files\drainer, the config and
# state under C:\ProgramData\drainer, the "drainer" Event Log source, and the every-minute scheduled task.
# Run as Administrator from the repository (or an unpacked source tree):
#   powershell -ExecutionPolicy Bypass -File packaging\windows\install.ps1
# The kill switch is C:\ProgramData\drainer\disabled (set disabled_file in the config to it).
param(
    [string]$Source = (Resolve-Path "$PSScriptRoot\..\.."),
    [string]$Python = "py"
)
$ErrorActionPreference = 'Stop'

$programDir = 'C:\Program Files\drainer'
$dataDir = 'C:\ProgramData\drainer'
New-Item -ItemType Directory -Force -Path $programDir, $dataDir, "$dataDir\hooks.d", "$dataDir\state" | Out-Null

& $Python -3 -m venv "$programDir\venv"
& "$programDir\venv\Scripts\python.exe" -m pip install --upgrade pip
& "$programDir\venv\Scripts\python.exe" -m pip install $Source

if (-not (Test-Path "$dataDir\config.toml")) {
    Copy-Item "$Source\config.example.toml" "$dataDir\config.toml"
}

# The Event Log source drainer (and the example hook log-eventlog.ps1) write to.
if (-not [System.Diagnostics.EventLog]::SourceExists('drainer')) {
    New-EventLog -LogName Application -Source 'drainer'
}

# Only Administrators and SYSTEM may change what drainer runs (hooks, config).
icacls $dataDir /inheritance:r /grant:r 'Administrators:(OI)(CI)F' 'SYSTEM:(OI)(CI)F' | Out-Null

Register-ScheduledTask -TaskName 'drainer-check' -TaskPath '\drainer\' `
    -Xml (Get-Content "$PSScriptRoot\drainer-task.xml" -Raw) -Force | Out-Null
Write-Output "drainer installed; the task \drainer\drainer-check runs every minute."
