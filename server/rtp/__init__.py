"""RTP media for SIP calls: packets, sequence tracking, RTCP and RFC 4733 telephone-events."""
