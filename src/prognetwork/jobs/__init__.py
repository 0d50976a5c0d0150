"""Batch jobs that run beside the services (CLI commands and Kubernetes CronJobs): logical
backups proven by restoring them, and what else runs to completion rather than forever.

`storage` is where their files go (a local directory or S3); it names no job.
"""
