// The command and parameter parser on arbitrary lines. Invariants: no
// crash; a refusal is a 5xx reply; a parsed MAIL/RCPT parameter value that
// went through xtext has no control characters.

import TernProtocol

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzCommand(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let line = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    for esmtp in [true, false] {
        switch CommandParser.parse(Substring(line), esmtp: esmtp) {
        case .failure(let e):
            precondition(e.reply.code >= 500 && e.reply.code < 600, "a refusal that is not 5xx")
        case .success(.mail(_, let p)):
            for v in [p.envelopeID, p.auth].compactMap({ $0 }) {
                precondition(!v.unicodeScalars.contains { $0.value < 0x20 || $0.value == 0x7F }, "control character from xtext")
            }
        case .success(.rcpt(_, let p)):
            if let o = p.orcpt { precondition(!o.address.unicodeScalars.contains { $0.value < 0x20 || $0.value == 0x7F }) }
        case .success:
            break
        }
    }
    _ = XText.decode(line)
    return 0
}
