// DKIM canonicalisation over arbitrary message bytes. Invariants: no
// crash; every byte is in exactly one header field or the body; a relaxed
// header field is one line (no CR or LF before its final CRLF); canonical
// bodies end in CRLF (or are empty, relaxed) and are fixed points
// (canonicalising them again changes nothing); bottom-up selection never
// returns a field twice.

import TernMessage

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzDKIM(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    let (fields, bodyStart) = DKIMCanonical.split(bytes)
    precondition(bodyStart <= bytes.count)
    let headerBytes = fields.reduce(0) { $0 + $1.raw.count }
    precondition(headerBytes <= bodyStart && bodyStart - headerBytes <= 2, "bytes lost or counted twice")
    for f in fields {
        let relaxed = DKIMCanonical.header(f, .relaxed)
        precondition(relaxed.suffix(2) == [13, 10])
        precondition(!relaxed.dropLast(2).contains(13) && !relaxed.dropLast(2).contains(10), "a relaxed field spans lines")
        precondition(DKIMCanonical.header(f, .simple).suffix(2) == [13, 10])
    }
    for c in DKIMCanonicalization.allCases {
        let body = DKIMCanonical.body(bytes[bodyStart...], c)
        precondition(body.isEmpty ? c == .relaxed : body.suffix(2) == [13, 10])
        precondition(DKIMCanonical.body(body[...], c) == body, "canonical form is not a fixed point")
    }
    let names = fields.prefix(8).map(\.name) + ["from", "from", "subject"]
    let chosen = DKIMCanonical.select(names, from: fields)
    precondition(chosen.count <= fields.count)
    return 0
}
