"""SIP signalling: messages, digest auth, transactions, dialogs and the SIP front door."""
