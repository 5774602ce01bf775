"""The layer-wise probe: what each encoder layer or aggregation keeps, per skill, without training a U-Net."""
