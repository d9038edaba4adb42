"""Process exit codes of `otaship-deploy`; the README documents them.

A CI job only sees the code, so each one names a different thing to fix.
"""

from __future__ import annotations

OK = 0
# The build, the upload or the receiver failed: retrying or fixing code may help.
DEPLOY_FAILED = 1
# The inputs, the project or the credentials are wrong: change the configuration.
BAD_INPUT = 2
# The canary did not meet its thresholds (rolled back or not), or someone aborted the rollout.
ROLLOUT_FAILED = 3
# The rollout was still running when the action stopped following it.
FOLLOW_TIMEOUT = 4
