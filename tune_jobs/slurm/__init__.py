"""Sweeps on Slurm: one batch job is one Ray cluster over its allocation, with the sweep as its driver.

    instrument-sweep slurm seed --nodes 2 --gpus-per-node 4 --time 02:00:00 --storage ~/sweeps
    instrument-sweep slurm seed --nodes 2 --gpus-per-node 4 --dry-run   # print the job script; submit nothing
    instrument-sweep status 4242                                        # Slurm's state and the last progress line
    instrument-sweep logs 4242 --follow                                 # the job's output as it grows
    instrument-sweep slurm --resume seed-20261204-101500 --storage ~/sweeps   # after scancel or the time limit

    job.py      the allocation (validated flags) and the job script it writes
    submit.py   checks, `sbatch --test-only`, the experiment's job files, `sbatch`
    follow.py   `status` and `logs` of a Slurm job id
    in_job.py   what the job script runs on its nodes: the token, free ports, waiting for Ray's nodes
    steps.py    the sweep ends the job's Ray steps as it exits, so they clean up
    client.py   Slurm's own commands (sbatch, scontrol, squeue, sacct, sinfo)
"""
