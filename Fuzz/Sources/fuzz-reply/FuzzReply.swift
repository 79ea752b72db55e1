// The client's reply parser, the reply-to-command check and dot-stuffing.
// Invariants: no crash; every reply is within the line and size bounds and
// has no control characters in its text; what the client would send as
// DATA never holds a bare CR or LF and ends with CRLF "." CRLF.

import TernProtocol

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzReply(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    var parser = ReplyParser()
    for raw in bytes.split(separator: 10, omittingEmptySubsequences: false) {
        var line = String(decoding: raw, as: UTF8.self)
        if line.hasSuffix("\r") { line.removeLast() }
        guard let reply = try? parser.feed(line) else { continue }
        precondition(reply.lines.count <= ReplyParser.maxLines)
        precondition(!reply.text.unicodeScalars.contains { $0.value < 0x20 || ($0.value >= 0x7F && $0.value <= 0x9F) }, "control character in reply text")
        let kept = reply.keepingText(ReplyParser.keptTextBytes)
        precondition(kept.text.utf8.count <= ReplyParser.keptTextBytes + kept.lines.count + 3, "kept text over its bound")
        for step in [ClientStep.greeting, .ehlo, .mail, .rcpt, .data, .endOfData] { _ = step.accepts(reply) }
    }
    let out = ClientProtocol.dataText(bytes)
    precondition(out.count >= 3 && Array(out.suffix(3)) == [46, 13, 10])
    for (i, b) in out.enumerated() {
        if b == 13 { precondition(i + 1 < out.count && out[i + 1] == 10, "bare CR sent") }
        if b == 10 { precondition(i > 0 && out[i - 1] == 13, "bare LF sent") }
    }
    return 0
}
