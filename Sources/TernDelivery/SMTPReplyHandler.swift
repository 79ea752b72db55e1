// Inbound half of the SMTP client: turns bytes into replies and hands each
// to the oldest waiting request, in order — which is all PIPELINING needs
// (RFC 2920 §3.1: replies come in command order). Each wait has a deadline;
// a missed one fails every waiter and closes the connection.

import NIOCore
import TernProtocol

final class SMTPReplyHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    private var buffer = ByteBuffer()
    private var parser = ReplyParser()
    /// Called on the loop with the reply, or the fault that ended the connection.
    typealias ReplyCallback = (Result<SMTPReply, ClientFault>) -> Void

    private var waiting = CircularBuffer<(done: ReplyCallback, timeout: TimeAmount)>()
    /// The greeting, when it arrives before anyone waits for it. After the
    /// greeting every reply must answer a command we sent: one that comes
    /// unasked means the server is out of step (see `deliver`).
    private var early = CircularBuffer<SMTPReply>()
    private var greeted = false
    private var failure: ClientFault? = nil
    private var context: ChannelHandlerContext? = nil
    /// When the oldest waiter's reply is due: its timeout counts from when
    /// it became the oldest (the previous reply, or the request). One timer
    /// serves the whole pipeline and re-arms itself when it fires early,
    /// instead of a scheduled task per expected reply.
    private var deadline: NIODeadline? = nil
    private var timer: Scheduled<Void>? = nil
    private var timerFiresAt: NIODeadline = .distantFuture

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    /// A future for the next reply; must be called on the channel's loop.
    func expect(timeout: TimeAmount, loop: EventLoop) -> EventLoopFuture<SMTPReply> {
        let promise = loop.makePromise(of: SMTPReply.self)
        expect(timeout: timeout, loop: loop) { promise.completeWith($0.mapError { $0 }) }
        return promise.futureResult
    }

    /// `done` gets the next reply (or the fault); on the channel's loop.
    /// Callbacks rather than promises: a pipelined group gathers its replies
    /// without a future, a promise and a callback list per reply.
    func expect(timeout: TimeAmount, loop: EventLoop, _ done: @escaping ReplyCallback) {
        if let r = early.popFirst() { greeted = true; done(.success(r)); return }
        if let f = failure { done(.failure(f)); return }
        waiting.append((done, timeout))
        if waiting.count == 1 { due(loop.now + timeout, loop: loop) }
    }

    private func due(_ at: NIODeadline, loop: EventLoop) {
        deadline = at
        if timer != nil && timerFiresAt <= at { return } // it re-arms when it fires
        timer?.cancel()
        timerFiresAt = at
        let bound = NIOLoopBound(self, eventLoop: loop)
        timer = loop.scheduleTask(deadline: at) { bound.value.timerFired(loop: loop) }
    }

    private func timerFired(loop: EventLoop) {
        timer = nil
        guard let deadline, !waiting.isEmpty else { return }
        if loop.now < deadline { due(deadline, loop: loop) } else { fail(.timeout) }
    }

    /// Drops anything received but not yet read: after STARTTLS's 220, bytes
    /// that came in the clear must not be taken as replies (RFC 3207 §4.2).
    func discardBuffered() {
        buffer.clear()
        parser = ReplyParser()
        early.removeAll()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        buffer.writeBuffer(&bytes)
        while let lf = buffer.readableBytesView.firstIndex(of: 10) {
            let length = lf - buffer.readerIndex
            var line = buffer.readString(length: length) ?? ""
            buffer.moveReaderIndex(forwardBy: 1)
            if line.hasSuffix("\r") { line.removeLast() }
            do {
                if let reply = try parser.feed(line) { deliver(reply) }
            } catch ReplyParser.Failure.tooLong {
                fail(.protocolError("reply longer than \(ReplyParser.maxLines) lines or \(ReplyParser.maxBytes) octets"))
                return
            } catch {
                fail(.protocolError("bad reply line: \(String(line.prefix(80)).escapingControlCharacters())"))
                return
            }
            if failure != nil { return }
        }
        // RFC 5321 §4.5.3.1.5 allows 512 octets a reply line; some servers
        // send more, none sends 4 KiB.
        if buffer.readableBytes > SMTPReplyHandler.maxLineBytes { fail(.protocolError("reply line too long")); return }
        buffer.discardReadBytes()
    }

    func channelInactive(context: ChannelHandlerContext) {
        fail(.closed)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        fail(.protocolError("\(error)"))
    }

    static let maxLineBytes = 4096

    private func deliver(_ reply: SMTPReply) {
        if let w = waiting.popFirst() {
            greeted = true
            if let next = waiting.first, let loop = context?.eventLoop {
                due(loop.now + next.timeout, loop: loop)
            } else {
                deadline = nil
            }
            w.done(.success(reply))
        } else if !greeted && early.isEmpty {
            early.append(reply) // the greeting, before open() waits for it
        } else {
            // A reply nobody asked for: whatever comes next would be taken
            // as the answer to the wrong command.
            fail(.protocolError("unsolicited reply: \(reply.keepingText(200))"))
        }
    }

    private func fail(_ fault: ClientFault) {
        if failure == nil { failure = fault }
        timer?.cancel()
        timer = nil
        deadline = nil
        while let w = waiting.popFirst() {
            w.done(.failure(fault))
        }
        context?.close(promise: nil)
    }
}
