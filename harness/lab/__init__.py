"""The device lab: many phones on many hosts, scheduled through Ray (docs/lab.md).

- ``harness.lab.ray_adapter``: the one module that imports Ray (start/join nodes, connect, submit, status);
- ``harness.lab.inventory``: what a host owns (discovered phones, the lab TOML file, device groups) and the
  custom resources it advertises (``device:<serial>``, ``monsoon:<serial>``);
- ``harness.lab.devicejob``: what runs on the node that owns a device (one run of the plan, windows straight
  to the shared store);
- ``harness.lab.labrun``: ``harness run --lab``: prepare once, ship, dispatch, record lost nodes, resume;
- ``harness.lab.sweep``: ``harness sweep --lab``: the accuracy tasks as Ray tasks.
"""
