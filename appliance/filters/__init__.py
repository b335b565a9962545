"""The inbound checks (issue 11) and DKIM signing: a pipeline of checks run at each SMTP stage.

- base.py: the stages, the facts a session gathers, the verdicts a check returns;
- pipeline.py: runs the checks of one stage in order, logs one line per verdict, turns a
  refusal into the SMTP reply (reject, never bounce);
- build.py: the checks `[checks]` asks for, in their order (tap.py calls it);
- one module per check: dns.py (lookups through twisted.names), fcrdns.py, dnsbl.py, spf.py,
  dkimverify.py, dmarc.py, authresults.py, spamd.py, clamd.py, greylist.py, rates.py,
  hooks.py; dkimsign.py signs our users' mail.
"""
