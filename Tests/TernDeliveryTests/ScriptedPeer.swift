// A scripted SMTP peer for the client's hostile-server tests: it reads
// lines, skips DATA content up to the final dot, and answers what the
// test's script says, in whatever order the script chooses.

import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

final class ScriptedPeer: Sendable {
    /// What one connection has seen; the script may hold replies back.
    struct State {
        var inData = false
        var held: [String] = []
        var lines: [String] = []
        /// Set by the script: close the connection after this read's replies (RFC 5321 §3.8's 421 and close).
        var close = false
    }

    typealias Script = @Sendable (_ line: String, _ state: inout State) -> [String]

    let port: Int
    let channel: Channel
    private let box: NIOLockedValueBox<(connections: Int, lines: [String])>
    var connections: Int { box.withLockedValue { $0.connections } }
    var lines: [String] { box.withLockedValue { $0.lines } }

    private init(port: Int, channel: Channel, box: NIOLockedValueBox<(connections: Int, lines: [String])>) {
        self.port = port
        self.channel = channel
        self.box = box
    }

    /// `greeting` goes out first (several lines allowed); `script` answers
    /// each command line and the final dot ("." once DATA content ends).
    static func start(greeting: String = "220 peer.test ESMTP", group: EventLoopGroup, _ script: @escaping Script) async throws -> ScriptedPeer {
        let box = NIOLockedValueBox<(connections: Int, lines: [String])>((0, []))
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { ch in
                ch.eventLoop.makeCompletedFuture {
                    try ch.pipeline.syncOperations.addHandler(PeerHandler(greeting: greeting, script: script, box: box))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        return ScriptedPeer(port: channel.localAddress!.port!, channel: channel, box: box)
    }

    func stop() async { try? await channel.close() }
}

private final class PeerHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    let greeting: String
    let script: ScriptedPeer.Script
    let box: NIOLockedValueBox<(connections: Int, lines: [String])>
    var buffer = ByteBuffer()
    var state = ScriptedPeer.State()

    init(greeting: String, script: @escaping ScriptedPeer.Script, box: NIOLockedValueBox<(connections: Int, lines: [String])>) {
        self.greeting = greeting
        self.script = script
        self.box = box
    }

    func channelActive(context: ChannelHandlerContext) {
        box.withLockedValue { $0.connections += 1 }
        write([greeting], context)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        buffer.writeBuffer(&bytes)
        var out: [String] = []
        while let lf = buffer.readableBytesView.firstIndex(of: 10) {
            var line = buffer.readString(length: lf - buffer.readerIndex)!
            buffer.moveReaderIndex(forwardBy: 1)
            if line.hasSuffix("\r") { line.removeLast() }
            if state.inData {
                guard line == "." else { continue }
                state.inData = false
            }
            box.withLockedValue { $0.lines.append(line) }
            state.lines.append(line)
            let replies = script(line, &state)
            if replies.contains(where: { $0.hasPrefix("354") }) { state.inData = true }
            out += replies
            if state.close { break } // what the client pipelined behind is never read
        }
        buffer.discardReadBytes()
        if !out.isEmpty { write(out, context) }
        if state.close { context.close(promise: nil) }
    }

    private func write(_ replies: [String], _ context: ChannelHandlerContext) {
        var b = context.channel.allocator.buffer(capacity: 256)
        for r in replies { b.writeString(r + "\r\n") }
        context.writeAndFlush(wrapOutboundOut(b), promise: nil)
    }
}

/// The usual answers of a well-behaved server (ESMTP with PIPELINING).
func plainReply(_ line: String, name: String = "peer.test") -> [String] {
    let verb = line.prefix(4).uppercased()
    switch verb {
    case "EHLO": return ["250-\(name)", "250-PIPELINING", "250 ENHANCEDSTATUSCODES"]
    case "HELO": return ["250 \(name)"]
    case "MAIL": return ["250 2.1.0 Ok"]
    case "RCPT": return ["250 2.1.5 Ok"]
    case "DATA": return ["354 go ahead"]
    case "RSET": return ["250 2.0.0 Ok"]
    case "QUIT": return ["221 2.0.0 Bye"]
    case ".": return ["250 2.0.0 Ok: queued"]
    default: return ["502 5.5.1 what"]
    }
}
