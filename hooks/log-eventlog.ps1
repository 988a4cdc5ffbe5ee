# drainer example hook (Windows): write every phase to the Windows Event Log.
# Install it in any phase directory, e.g. C:\ProgramData\drainer\hooks.d\pre-drain\00-log-eventlog.ps1;
# drainer runs .ps1 hooks with: powershell.exe -NoProfile -NonInteractive -ExecutionPolicy Bypass -File.
# The "drainer" source is registered by the install script (New-EventLog -LogName Application -Source drainer).
$ErrorActionPreference = 'Stop'

$message = "phase=$env:DRAINER_PHASE vm=$env:DRAINER_VM_NAME event=$env:DRAINER_EVENT_ID " +
           "type=$env:DRAINER_EVENT_TYPE status=$env:DRAINER_EVENT_STATUS not_before=$env:DRAINER_NOT_BEFORE " +
           "dry_run=$env:DRAINER_DRY_RUN"

try {
    # Windows PowerShell 5.1 has Write-EventLog; PowerShell 7 on Windows has New-WinEvent only for
    # registered providers, so fall back to the .NET API there.
    if (Get-Command Write-EventLog -ErrorAction SilentlyContinue) {
        Write-EventLog -LogName Application -Source 'drainer' -EventId 1000 -EntryType Information -Message $message
    } else {
        [System.Diagnostics.EventLog]::WriteEntry('drainer', $message, 'Information', 1000)
    }
} catch {
    Write-Error "could not write to the Event Log: $_"
}
exit 0
