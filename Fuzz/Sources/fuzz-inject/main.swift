// The injection API's request parser and MIME builder (issue 20) against
// any bytes: a JSON request is parsed and checked, and every message it
// makes is built. Invariants: no crash; a refusal names a status of 400 or
// 413; every built message is within the size limit, has CRLF line ends
// only, no line over 998 bytes, no NUL, a From: field, and a header that
// no substituted value broke (every header line is a field or a folded
// continuation).

import TernInjectPure

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzInject(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    let limits = InjectionLimits(maxMessageSize: 64 * 1024, maxRecipients: 20)
    do {
        let request = try InjectionRequest.parse(bytes, limits: limits)
        let messages = try request.messages(limits: limits) { "B" }
        for m in messages {
            precondition(m.body.count <= limits.maxMessageSize)
            precondition(!m.recipients.isEmpty)
            var i = 0, line = 0, inHeader = true, lineStart = 0
            while i < m.body.count {
                let b = m.body[i]
                precondition(b != 0)
                if b == 13 {
                    precondition(i + 1 < m.body.count && m.body[i + 1] == 10, "bare CR")
                    if inHeader {
                        if i == lineStart {
                            inHeader = false
                        } else {
                            let first = m.body[lineStart]
                            let isField = m.body[lineStart..<i].contains(UInt8(ascii: ":"))
                            precondition(first == 32 || first == 9 || isField, "a header line that is not a field")
                        }
                    }
                    i += 2
                    line = 0
                    lineStart = i
                    continue
                }
                precondition(b != 10, "bare LF")
                line += 1
                precondition(line <= 998, "line too long")
                i += 1
            }
        }
    } catch {
        precondition(error.status == 400 || error.status == 413)
    }
    return 0
}
