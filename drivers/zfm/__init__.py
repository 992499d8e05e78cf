"""Serial fingerprint modules of the ZFM / R30x / R50x / AS608 family (`EF 01` packets)."""
