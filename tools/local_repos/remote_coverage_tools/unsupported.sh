#!/bin/sh
# Stands in for Bazel's downloadable coverage tools, which this offline build does not fetch.
echo "coverage is not supported by this build: @remote_coverage_tools is an offline stand-in" >&2
exit 1
