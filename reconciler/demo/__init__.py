"""``smtpctl demo``: the product's first impression, run against real loopback servers."""
