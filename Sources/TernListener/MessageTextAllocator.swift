// The allocator of messages' text while they arrive (SessionConfig's
// textAllocator): a buffer of 256 KiB or more is a mapping of its own
// (CTernSystem's tern_buf_*). A ByteBuffer's capacity is a power of two, so
// a 10 MiB message sits in a 16 MiB block; from a malloc arena, the block's
// unused part is memory an earlier message touched, resident all the same,
// and freed blocks stay in the arena (measured: 20 sessions of 10 MiB held
// ~21 MiB each). A mapping costs the pages written and goes back to the
// kernel when the message is stored.

@_spi(CustomByteBufferAllocator) import NIOCore
import CTernSystem

extension ByteBufferAllocator {
    public static let messageText = ByteBufferAllocator(
        allocate: { tern_buf_allocate($0) },
        reallocate: { tern_buf_reallocate($0, $1, $2) },
        deallocate: { tern_buf_deallocate($0) },
        copy: { $0.copyMemory(from: $1, byteCount: $2) })
}
