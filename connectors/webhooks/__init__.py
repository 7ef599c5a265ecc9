"""Signed inbound webhooks of the email providers (DESIGN.md section 6).

One module per vendor owns that vendor's verification and its mapping to the
normalised event model of ``streams.events``:

- :mod:`connectors.webhooks.sendgrid`: SendGrid Event Webhook (ECDSA P-256 signature headers),
- :mod:`connectors.webhooks.mailgun`: Mailgun webhooks (HMAC-SHA256 of timestamp + token, replay guard),
- :mod:`connectors.webhooks.postmark`: Postmark webhooks (HTTP Basic auth on the webhook URL),
- :mod:`connectors.webhooks.ses`: Amazon SES event publishing through SNS (SNS message signatures),
- :mod:`connectors.webhooks.common`: the errors, outcome type and parsing helpers they share,
- :mod:`connectors.webhooks.replay`: replay guards (in-memory and Redis) for one-time tokens.

The modules are pure apart from the replay guard: they take raw bytes, headers and a
clock and return events or raise; :mod:`connectors.webhook_routes` turns that into HTTP.
"""
