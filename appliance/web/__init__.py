"""The web listener (`[listen] web`, twisted.web): the status page, /metrics, client autoconfig.

- site.py: the resource tree, access control ([web] allow_networks, admins) and the listener;
- page.py: the status page (HTML without JavaScript);
- plots.py: the mail-flow plots as server-side SVG;
- metrics.py: /metrics in the Prometheus text format;
- autoconfig.py: Thunderbird autoconfig, Microsoft Autodiscover, Apple .mobileconfig.
"""
