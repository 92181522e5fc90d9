#!/usr/bin/env bash
# The project's test suite: the command README.md gives and .ci/run runs, so
# the two never drift apart.
#
# Usage:  scripts/test.sh [cargo test arguments]
#         scripts/test.sh crash                 # only tests whose name matches "crash"
#         scripts/test.sh -- --nocapture        # show output, e.g. "SKIPPED: reason" lines
#
# Unit tests sit next to the code (the golden tests that pin the on-disk
# format among them); tests/integration.rs drives the real binary against a
# fresh temporary directory per test. Some tests need external tools
# (qemu-img, mkfs.*, sfdisk, sgdisk) and, for mounts and loop devices, root:
# .ci/run installs everything on Debian. Integration tests skip (and pass)
# when a root-only facility is missing, unless KLUIS_TEST_STRICT is set.
#
# Environment (passed through to the tests):
#   KLUIS_TEST_STRICT=1   a test that would skip (no /dev/fuse, not root, a
#                         tool missing) fails instead; .ci/run sets it
#   KLUIS_TEST_SEED=N     replay a randomized test with the seed it printed
#   KLUIS_CRASH_ITERS=N   processes the crash test kills [50]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ -n ${KLUIS_TEST_STRICT:-} && ${KLUIS_TEST_STRICT} != 0 ]]; then
    echo "test.sh: strict mode (KLUIS_TEST_STRICT): a test that cannot run fails" >&2
else
    [[ $EUID -eq 0 ]] || echo "test.sh: not running as root: tests that mount or attach loop devices will skip" >&2
fi

cargo test "$@"
