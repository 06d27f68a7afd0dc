/** The exit status of a run (README "Exit codes"); sysexits' EX_TEMPFAIL for "another run is active". */
export const EXIT_OK = 0
export const EXIT_FAILED = 1
export const EXIT_USAGE = 2
export const EXIT_RUNNING = 75
