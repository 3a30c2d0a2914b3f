#!/bin/sh
echo "remote_coverage_tools stand-in: coverage is not supported offline" >&2
exit 1
