"""The exit-16 message: one line per validator issue kind, naming the key or the file."""

from bids_app.bids.validate import error_issues, summarize_issues


def test_one_line_per_kind_names_the_key():
    report = {
        "issues": {
            "issues": [
                {
                    "code": "SIDECAR_KEY_REQUIRED",
                    "subCode": "PulseSequenceType",
                    "severity": "error",
                    "location": f"/sub-01/anat/sub-01_flip-{i}_VFA.nii.gz",
                    "issueMessage": "Field description: a long text",
                }
                for i in (1, 2)
            ]
            + [{"code": "JSON_INVALID", "severity": "warning", "location": "/x.json"}]
        }
    }
    issues = error_issues(report)
    assert len(issues) == 2  # the warning is not an error
    (line,) = summarize_issues(issues)
    assert "SIDECAR_KEY_REQUIRED" in line
    assert "PulseSequenceType" in line
    assert "2 files" in line
    assert "sub-01_flip-1_VFA.nii.gz" in line
    assert "Field description" not in line
