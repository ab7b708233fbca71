"""A DICOM node (``pneumo dicom-listen``): the PACS sends chest radiographs, the node
screens each one and files the results back into the same study.

- ``scp.py``: the Storage SCP and the C-STORE statuses it answers;
- ``spool.py``: the durable inbox and outbox (files and SQLite) that nothing is lost
  from across a crash and nothing is delivered twice from;
- ``screener.py``: the background worker that screens with ``dicom_results``;
- ``sender.py``: the C-STORE sender with retries and back-off;
- ``node.py``: all of them started and stopped together;
- ``tls.py``: DICOM over TLS for the SCP and the sender, from checked PEM files;
- ``admin.py``: ``pneumo dicom-spool``, what waits in the spool and what an operator
  does about it, beside a running node.
"""
