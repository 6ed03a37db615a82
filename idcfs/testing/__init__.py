"""Test tools, not part of idcfs proper: the sandbox origin (a moto S3 server and fake-gcs-server filled with
generated DICOM), its DICOM generator, and a counting, fault-injecting HTTP proxy. The tests, the benchmarks and
`idcfs sandbox` use them; they need the sandbox extra (`pip install 'idcfs[sandbox]'`), which the base install lacks.
"""
