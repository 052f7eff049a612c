"""The reference's flags and their defaults, as its users type them."""

REFERENCE_FLAGS = {
    "epoch": 0, "n_epochs": 200, "dataset_name": "monet2photo", "batch_size": 1, "lr": 0.0002, "b1": 0.5,
    "b2": 0.999, "decay_epoch": 100, "n_cpu": 8, "img_height": 256, "img_width": 256, "channels": 3,
    "sample_interval": 100, "checkpoint_interval": -1, "n_residual_blocks": 9, "lambda_cyc": 10.0,
    "lambda_id": 5.0,
}
