"""Train a restoration model:  accelerate launch train.py -opt options/demo/nafnet_demo.yml"""
from ggt_ir.train.cli import run_and_exit

if __name__ == "__main__":
    run_and_exit()
