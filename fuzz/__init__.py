"""Coverage-guided fuzz harnesses (atheris), one module per parser; see fuzz/README.md.

Each harness module defines ``TestOneInput(data: bytes)``: it feeds ``data`` to a
public parsing entry point of the project and returns quietly when the project
answers with its own typed error. Any other exception escaping is a finding.
The modules import no atheris: the corpus replay test runs them in-process.
"""

HARNESSES = (
    "wire", "fingerprint_template", "face_template", "zfm", "mjpeg", "chunked", "camera_http", "config", "est",
    "agent_answers", "localapi", "csr", "simulator_lines",
)
