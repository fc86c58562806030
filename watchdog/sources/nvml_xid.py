"""What each common Xid code means and what it asks of an operator, kept as data.

The codes, mnemonics, immediate actions and the fatal flag follow NVIDIA's Xid
catalog ("Analyzing Xid Errors with the Xid Catalog", docs.nvidia.com/deploy/
xid-errors; its "Resolution Bucket (Immediate Action)" column, as NVIDIA's
NVSentinel ships it in ``xiderrorsmapping.csv``). The meanings are short
paraphrases of NVIDIA's Xid error descriptions. Sources disagree on a few codes
(the k8s-device-plugin ignores 109, the catalog resets the GPU): this table
follows the catalog, and tests/test_nvml_events.py checks it row by row.

The watchdog only reports: it never resets a GPU or kills a process because of
an Xid. An Xid that is not in this table is reported with action ``unknown``.
"""

from __future__ import annotations

from dataclasses import dataclass

# What the catalog's immediate-action buckets become in metric labels and logs.
RESTART_APP = "restart_app"  # RESTART_APP: the application that hit it must restart
RESET_GPU = "reset_gpu"  # RESET_GPU (and WORKFLOW_XID_48): drain the GPU, then reset it
REBOOT = "reboot"  # RESTART_BM: the GPU needs the machine rebooted (or power-cycled)
CHECK_NVLINK = "check_nvlink"  # WORKFLOW_NVLINK_ERR: NVLink diagnosis, then usually a reset
INVESTIGATE = "investigate"  # WORKFLOW_XID_45, Xid 154: read the Xid logged just before
REPORT = "report"  # UNEXPECTED_ERR_REPORT_ISSUE: collect nvidia-bug-report.sh, tell NVIDIA
NONE = "none"  # IGNORE: informational, nothing to do now (watch the trend)
UNKNOWN = "unknown"  # not in this table


@dataclass(frozen=True, slots=True)
class XidInfo:
    """One Xid code.

    Attributes:
        code: The Xid number.
        name: NVIDIA's mnemonic (``ROBUST_CHANNEL_GPU_ECC_DBE``).
        meaning: One line an operator can act on.
        action: The immediate action (``reset_gpu``, ``restart_app``, ...).
        fatal: The GPU (not just one application) needs intervention: NVIDIA's
            catalog marks the code FATAL. Alerted on at once.
    """

    code: int
    name: str
    meaning: str
    action: str
    fatal: bool


def _catalog(*rows: tuple[int, str, str, str, bool]) -> dict[int, XidInfo]:
    return {row[0]: XidInfo(*row) for row in rows}


XID_CATALOG = _catalog(
    (8, "ROBUST_CHANNEL_FIFO_ERROR_IDLE_TIMEOUT",
     "GPU stopped processing: a channel timed out (usually the application or the driver)",
     RESTART_APP, False),
    (13, "ROBUST_CHANNEL_GR_EXCEPTION",
     "graphics engine exception: usually the application (out-of-range access, illegal "
     "instruction); rarely hardware", RESTART_APP, False),
    (31, "ROBUST_CHANNEL_FIFO_ERROR_MMU_ERR_FLT",
     "GPU memory page fault: the application accessed an illegal address (rarely the "
     "driver or hardware)", RESTART_APP, False),
    (32, "ROBUST_CHANNEL_PBDMA_ERROR",
     "invalid or corrupted push buffer stream: a bad command stream, or PCIe or memory "
     "corruption", RESTART_APP, False),
    (43, "ROBUST_CHANNEL_RESETCHANNEL_VERIF_ERROR",
     "GPU stopped processing: a channel was reset after its application faulted; the GPU "
     "is healthy", NONE, False),
    (45, "ROBUST_CHANNEL_PREEMPTIVE_REMOVAL",
     "preemptive cleanup: the driver removed a channel after an earlier error (see the Xid "
     "before it) or because its process was killed", INVESTIGATE, False),
    (48, "ROBUST_CHANNEL_GPU_ECC_DBE",
     "double-bit ECC error: uncorrectable memory error; a GPU reset retires the page or "
     "remaps the row", RESET_GPU, True),
    (61, "PMU_BREAKPOINT",
     "internal micro-controller breakpoint or warning (PMU)", REPORT, True),
    (62, "PMU_HALT_ERROR",
     "internal micro-controller halted (PMU)", RESET_GPU, True),
    (63, "INFOROM_DRAM_RETIREMENT_EVENT",
     "ECC page retirement or row remapping recorded: the memory is repaired at the next "
     "GPU reset", NONE, False),
    (64, "INFOROM_DRAM_RETIREMENT_FAILURE",
     "ECC page retirement or row remapping could not be recorded", RESET_GPU, True),
    (68, "ROBUST_CHANNEL_NVDEC0_ERROR",
     "video decoder (NVDEC) exception", RESTART_APP, False),
    (69, "ROBUST_CHANNEL_GR_CLASS_ERROR",
     "graphics engine class error: the application sent an invalid command", RESTART_APP, False),
    (74, "NVLINK_ERROR",
     "NVLink error: a link to another GPU or an NVSwitch failed", CHECK_NVLINK, True),
    (79, "ROBUST_CHANNEL_GPU_HAS_FALLEN_OFF_THE_BUS",
     "GPU has fallen off the bus: it no longer answers on PCIe", REBOOT, True),
    (92, "EXCESSIVE_SBE_INTERRUPTS",
     "high single-bit ECC error rate: corrected errors above a threshold; watch the trend",
     NONE, False),
    (94, "ROBUST_CHANNEL_CONTAINED_ERROR",
     "contained ECC error: an uncorrectable error was confined to the applications using "
     "that memory; restart them", RESTART_APP, False),
    (95, "ROBUST_CHANNEL_UNCONTAINED_ERROR",
     "uncontained ECC error: an uncorrectable error may have reached every application on "
     "the GPU", RESET_GPU, True),
    (109, "ROBUST_CHANNEL_CTXSW_TIMEOUT_ERROR",
     "context switch timeout", RESET_GPU, True),
    (119, "GSP_RPC_TIMEOUT",
     "GSP RPC timeout: the GPU System Processor did not answer the driver", RESET_GPU, True),
    (120, "GSP_ERROR",
     "GSP error: the GPU System Processor's firmware failed", RESET_GPU, True),
    (140, "UNRECOVERABLE_ECC_ERROR_ESCAPE",
     "unrecoverable ECC error escaped containment", RESET_GPU, True),
    (154, "GPU_RECOVERY_ACTION_CHANGED",
     "GPU recovery action changed: the driver says what the GPU now needs (reset, reboot); "
     "see the Xid before it", INVESTIGATE, False),
)  # fmt: skip


def describe(code: int) -> XidInfo:
    """The catalog entry of ``code``; an unknown code is reported, never guessed at."""
    return XID_CATALOG.get(
        code,
        XidInfo(
            code,
            "UNKNOWN",
            "not in gpu-watchdog's Xid table: look it up in NVIDIA's Xid catalog",
            UNKNOWN,
            False,
        ),
    )
