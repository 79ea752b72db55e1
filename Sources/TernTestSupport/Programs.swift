// Running programs nobody here wrote (python3-dkim, opendkim-tools) from
// tests, and the message corpus the DKIM tests sign and verify. Children are
// reaped with waitpid (Process.waitUntilExit can hang on Linux).

import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Runs a program to its end; its standard output.
public func runTool(_ path: String, _ args: [String], input: String? = nil) throws -> String {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: path)
    p.arguments = args
    let out = Pipe()
    p.standardOutput = out
    p.standardError = FileHandle.nullDevice
    let inPipe = Pipe()
    p.standardInput = inPipe
    try p.run()
    if let input { inPipe.fileHandleForWriting.write(Data(input.utf8)) }
    try inPipe.fileHandleForWriting.close()
    let data = out.fileHandleForReading.readDataToEndOfFile()
    var status: Int32 = 0
    waitpid(p.processIdentifier, &status, 0)
    return String(decoding: data, as: UTF8.self)
}

/// Messages with every shape the canonicalisations must get exactly right.
public enum DKIMCorpus {
    public static var messages: [(String, [UInt8])] {
        let head = "From: Alice <alice@example.test>\r\nTo: bob@far.test\r\nSubject: hello\r\nDate: Sun, 6 Dec 2026 06:00:00 +0000\r\nMessage-ID: <m1@example.test>\r\n"
        var big = ""
        for i in 0..<20_000 { big += "line \(i) of a large body, with  double  spaces\t \r\n" }
        return [
            ("plain", Array((head + "\r\nHello.\r\n").utf8)),
            // Repeated: fields RFC 5322 lets repeat (OpenDKIM refuses a second To:).
            ("folded-and-repeated", Array(("From: \"Alice\r\n  Example\" <alice@example.test>\r\nTo: a@far.test,\r\n\tb@far.test\r\nComments: one\r\nComments: two\r\n"
                                           + "Subject:  folded\r\n   subject   \r\nReceived: from x\r\nReceived: from y\r\nDate: Sun, 6 Dec 2026 06:00:00 +0000\r\n\r\nbody\r\n").utf8)),
            ("empty-body", Array((head + "\r\n").utf8)),
            ("no-final-crlf", Array((head + "\r\nno line break at the end").utf8)),
            ("trailing-blank-lines-and-whitespace", Array((head + "\r\nline  \t\r\n  indented \r\n\r\n \r\n\r\n").utf8)),
            // RFC 5322 requires Date: (OpenDKIM refuses a message without one).
            ("utf8-headers", Array(("From: Zoë <zoe@example.test>\r\nTo: 山田 <yamada@far.test>\r\nSubject: café ☕ naïve\r\nDate: Sun, 6 Dec 2026 06:00:00 +0000\r\n\r\nbody\r\n").utf8)),
            ("eight-bit-body", Array((head + "Content-Type: text/plain; charset=latin1\r\nContent-Transfer-Encoding: 8bit\r\n\r\n").utf8) + [0xe9, 0xe8, 0x20, 0xff, 13, 10]),
            ("huge-body", Array((head + "\r\n" + big).utf8)),
        ]
    }
}

/// Runs a program to its end; its exit status.
public func runStatus(_ path: String, _ args: [String]) throws -> Int32 {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: path)
    p.arguments = args
    p.standardOutput = FileHandle.nullDevice
    p.standardError = FileHandle.nullDevice
    try p.run()
    var status: Int32 = 0
    waitpid(p.processIdentifier, &status, 0)
    return (status >> 8) & 0xff
}
