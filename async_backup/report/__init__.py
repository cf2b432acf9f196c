"""report/: what a run tells the operator: summary, progress, run report and metrics, the Teams
card and its sender, logging with secrets scrubbed, and the `status` command.

Owns `summary` (per-target counters, byte and request formatting; pure), `progress` (backup's
display and the verify/restore ticker), `runreport` (the JSON report, Prometheus metrics),
`card` (the Adaptive Card; pure), `notify` (the webhook POST: aiohttp's errors mapped here),
`publish` (report, metrics and card at the end of a run, and its closing lines), `jsonlines`
(`backup --json`: status and summary lines on stdout), `redact`,
`logsetup`, and `status` (reads the cache and the reports, sends nothing to S3).

Imports `errors`, `settings`, `cache` and `s3`'s pure `pricing`. Must not import any command or cli.
"""
