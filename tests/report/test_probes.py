"""The loss at the target bits read at three points of each run."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fraqat.report.probes import probe_markdown, probe_summary


def test_probe_summary_reads_the_loss_at_the_target_through_the_stages():
    fraqat_log = pd.DataFrame({"step": [0, 1, 2, 3, 4], "bits": [8.0, 8.0, 6.0, 4.0, 4.0],
                               "target_loss": [0.5, np.nan, 0.45, np.nan, 0.1]})
    qat_log = pd.DataFrame({"step": [0, 1], "bits": [4.0, 4.0], "target_loss": [0.4, 0.2]})
    logs = {("fraqat", 0): fraqat_log, ("fraqat", 1): fraqat_log.assign(
        target_loss=fraqat_log["target_loss"] * 2), ("qat", 0): qat_log}
    probes = probe_summary(logs, 4.0).set_index("method")
    assert probes.loc["fraqat"].tolist() == pytest.approx([0.75, 0.675, 0.15])
    assert probes.loc["qat", "final"] == 0.2 and np.isnan(probes.loc["qat", "before_target"])
    md = probe_markdown(probes.reset_index(), 4.0)
    assert "| fraqat | 0.750 | 0.675 | 0.150 |" in md
