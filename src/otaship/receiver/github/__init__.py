"""GitHub both ways: releases delivered by webhook become deploys, and rollouts
are reported back as GitHub deployments."""
