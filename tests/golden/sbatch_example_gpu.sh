#!/bin/bash

# Parameters
#SBATCH --account=my-project
#SBATCH --array=0-11%12
#SBATCH --cpus-per-task=8
#SBATCH --error={folder}/%A_%a_0_log.err
#SBATCH --gpus-per-node=4
#SBATCH --job-name=protoseg-golden
#SBATCH --mail-type=FAIL
#SBATCH --mem=64GB
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=4
#SBATCH --open-mode=append
#SBATCH --output={folder}/%A_%a_0_log.out
#SBATCH --partition=gpu
#SBATCH --signal=USR2@120
#SBATCH --time=1440
#SBATCH --wckey=submitit

# setup
module load cuda/12.4
source $HOME/protoseg/.venv/bin/activate

# command
export SUBMITIT_EXECUTOR=slurm
srun --unbuffered --output {folder}/%A_%a_%t_log.out --error {folder}/%A_%a_%t_log.err {python} -u -m submitit.core._submit {folder}
