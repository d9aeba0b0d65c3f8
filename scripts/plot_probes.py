"""TensorBoard probe curves -> a PNG grid: one panel per probe category, one line per run.

    python scripts/plot_probes.py SFT=logs/probes_sft DPO=logs/probes_dpo -o docs/figures/probes.png --delta
"""

from lit_align.cli.plot import main

if __name__ == "__main__":
    main()
