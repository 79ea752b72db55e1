// The address and IDNA parsers. Invariants: no crash; a parsed mailbox's
// canonical form parses again to the same canonical form; IDNA output is
// lower-case ASCII and stable under a second pass.

import TernProtocol

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzAddress(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let text = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    for utf8 in [true, false] {
        if case .success(let m) = AddressParser.parseMailbox(Substring(text), allowUTF8: utf8) {
            let c = m.canonical
            if let again = AddressParser.canonical(c) { precondition(again == c, "canonical form not stable: \(c) → \(again)") }
        }
        _ = AddressParser.parsePath(Substring(text), allowUTF8: utf8, allowNull: true, allowPostmaster: true)
    }
    if let a = IDNA.toASCII(text) {
        precondition(a.unicodeScalars.allSatisfy { $0.isASCII }, "IDNA output not ASCII")
        precondition(a == a.lowercased(), "IDNA output not lower-case")
        precondition(IDNA.toASCII(a) == a, "IDNA not stable: \(a.debugDescription)")
        precondition(!a.split(separator: ".", omittingEmptySubsequences: false).contains { $0.isEmpty }, "empty label")
    }
    _ = IPAddress(text)
    _ = IPNetwork(text)
    return 0
}
