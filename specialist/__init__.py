"""specialist: base model, data, calibration statistics, selection, compensation, surgery, FLOPs, export."""
