import Testing
@testable import TernMessage

@Suite struct HeaderTests {
    @Test func parsesFoldedFieldsAndStopsAtBody() {
        let raw = "Subject: a\r\n long subject\r\nMessage-ID:\r\n\t<id@x.test>\r\nX-Empty:\r\n\r\nBody: not a header\r\n"
        let h = HeaderBlock(Array(raw.utf8))
        #expect(h.first("subject") == "a long subject")
        #expect(h.first("Message-Id") == "<id@x.test>")
        #expect(h.first("X-Empty") == "")
        #expect(h.first("Body") == nil)
        #expect(h.length == raw.utf8.count - "Body: not a header\r\n".utf8.count)
        #expect(messageID(fromFieldValue: h.first("Message-ID")!) == "id@x.test")
    }

    @Test func noHeadersAtAll() {
        let h = HeaderBlock(Array("just text\r\n".utf8))
        #expect(h.fields.isEmpty)
        #expect(HeaderBlock([UInt8]()).fields.isEmpty)
    }

    /// `firstValue` (intake's scan) answers as `HeaderBlock.first` does, on
    /// random header sections: folding, case, bare LFs, junk lines, bodies.
    @Test func firstValueMatchesTheFullParse() {
        var rng = SystemRandomNumberGenerator()
        let names = ["Message-ID", "message-id", "MESSAGE-ID", "Date", "Subject", "X-Message-ID", "Message-ID ", "Message", ""]
        let values = ["<a@b>", " <a@b> ", "", "\t<x@y>\t", "é <u@v>", "(c) <1@2>"]
        for _ in 0..<2000 {
            var text = ""
            for _ in 0..<Int.random(in: 0...6, using: &rng) {
                switch Int.random(in: 0..<10, using: &rng) {
                case 0: text += " folded <f@g>"
                case 1: text += "no colon here"
                case 2: text += ""
                case 3: text += "\r"
                default: text += names.randomElement(using: &rng)! + ":" + values.randomElement(using: &rng)!
                }
                text += Bool.random(using: &rng) ? "\r\n" : "\n"
            }
            if Bool.random(using: &rng) { text += "Message-ID: <after@blank>\r\n" }
            let bytes = Array(text.utf8)
            let full = HeaderBlock(bytes)
            for name in ["Message-ID", "date", "Subject"] {
                let fast = bytes.withUnsafeBytes { HeaderBlock.firstValue(name, in: $0) }
                #expect(fast == full.first(name), "\(text.debugDescription) \(name)")
            }
        }
        let folded = Array("Subject: x\r\nMessage-Id: <a\r\n @b>\r\n\r\nMessage-ID: <body@x>\r\n".utf8)
        #expect(folded.withUnsafeBytes { HeaderBlock.firstValue("Message-ID", in: $0) } == "<a @b>")
    }

    @Test func bareLFHeaders() {
        let h = HeaderBlock(Array("To: a@b\nCc: c@d,\n e@f\n\nbody".utf8))
        #expect(h.all("cc") == ["c@d, e@f"])
    }
}

@Suite struct ReceivedTests {
    @Test func dates() {
        #expect(RFC5322Date.format(millis: 0) == "Thu, 1 Jan 1970 00:00:00 +0000")
        #expect(RFC5322Date.format(millis: 1_795_943_877_436) == "Sun, 29 Nov 2026 09:17:57 +0000")
        #expect(RFC5322Date.format(millis: 951_782_400_000) == "Tue, 29 Feb 2000 00:00:00 +0000")
    }

    @Test func receivedField() {
        let r = ReceivedHeader(helo: "client.test", clientAddress: "192.0.2.1", byHost: "mx.test", protocolName: "ESMTP",
                               queueID: "Q1", forRecipient: "b@local.test", date: 0)
        #expect(r.field == "Received: from client.test ([192.0.2.1])\r\n\tby mx.test (Tern) with ESMTP id Q1\r\n\tfor <b@local.test>; Thu, 1 Jan 1970 00:00:00 +0000\r\n")
        let v6 = ReceivedHeader(helo: "evil\r\nX-Injected: 1", clientAddress: "::1", byHost: "mx.test", protocolName: "SMTP",
                                queueID: "Q2", forRecipient: nil, date: 0)
        #expect(v6.field.hasPrefix("Received: from evil??X-Injected: 1 ([IPv6:::1])\r\n"))
        let comment = ReceivedHeader(helo: "a(b)\u{7F}é", clientAddress: "192.0.2.1", byHost: "mx.test", protocolName: "SMTP",
                                     queueID: "Q3", forRecipient: nil, date: 0)
        #expect(comment.field.hasPrefix("Received: from a?b??é ([192.0.2.1])\r\n"))
        #expect(!v6.field.contains("for <"))
    }

    @Test func queueIDsAreUniqueAndSortable() {
        let ids = (0..<10_000).map { _ in QueueID.make(millis: 1_795_943_877_436) }
        #expect(Set(ids).count == ids.count)
        #expect(ids.allSatisfy { $0.count == 16 && $0.allSatisfy { $0.isUppercase || $0.isNumber } })
        #expect(QueueID.make(millis: 1_000).prefix(10) < QueueID.make(millis: 2_000).prefix(10))
    }
}

@Suite struct TimestampTests {
    @Test func tableTimestamps() {
        #expect(RFC5322Date.timestamp(millis: 0) == "1970-01-01 00:00:00")
        #expect(RFC5322Date.timestamp(millis: 1_795_943_877_436) == "2026-11-29 09:17:57")
        #expect(RFC5322Date.timestamp(millis: 951_868_799_000) == "2000-02-29 23:59:59")
        #expect(RFC5322Date.iso8601(millis: 1_795_943_877_436) == "2026-11-29T09:17:57.436Z")
        #expect(RFC5322Date.iso8601(millis: 951_868_799_005) == "2000-02-29T23:59:59.005Z")
        #expect(RFC5322Date.iso8601(millis: 42) == "1970-01-01T00:00:00.042Z")
    }
}
