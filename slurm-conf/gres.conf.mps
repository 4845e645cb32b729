# gres.conf for nodes whose four GPUs are also shared through CUDA MPS as gres/mps (slurm.conf:
# GresTypes=gpu,mps and Gres=gpu:h100:4,mps:400): 100 shares per GPU. A step that holds MPS
# shares gets the GPU underneath in SLURM_STEP_GPUS and CUDA_MPS_ACTIVE_THREAD_PERCENTAGE
# (shares / shares per GPU, in percent); gres-oci gives its containers that GPU, the MPS pipe
# and log directories, and the percentage.
NodeName=node[01-16] Name=gpu Type=h100 File=/dev/nvidia[0-3]
NodeName=node[01-16] Name=mps Count=100 File=/dev/nvidia0
NodeName=node[01-16] Name=mps Count=100 File=/dev/nvidia1
NodeName=node[01-16] Name=mps Count=100 File=/dev/nvidia2
NodeName=node[01-16] Name=mps Count=100 File=/dev/nvidia3
