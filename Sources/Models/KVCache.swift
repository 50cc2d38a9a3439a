import SwitchyardSupport
/// Keys and values of the positions a sequence has seen, per layer. The forward pass writes the
/// rows of new positions and reads all earlier rows; where the rows live (one slab, pages, another
/// device or host) is the cache's business.
public protocol KVCache: AnyObject {
    /// Positions stored so far; the next token is at this position.
    var length: Int { get }
    /// The most positions it can hold.
    var capacity: Int { get }
    /// [kv_heads x head_dim] floats for (layer, position).
    func keyRow(layer: Int, position: Int) -> UnsafeMutablePointer<Float>
    func valueRow(layer: Int, position: Int) -> UnsafeMutablePointer<Float>
    /// Marks `count` more positions as stored (after every layer has written them).
    func advance(by count: Int)
    /// Forgets positions from `length` on, to reuse a prefix or restart.
    func truncate(to length: Int)
}

/// One float32 slab per layer: [capacity, kv_heads x head_dim] for keys, the same for values.
public final class ContiguousKVCache: KVCache {
    public private(set) var length = 0
    public let capacity: Int
    public let rowWidth: Int
    private let keys: [UnsafeMutablePointer<Float>]
    private let values: [UnsafeMutablePointer<Float>]

    public init(layers: Int, rowWidth: Int, capacity: Int) {
        self.capacity = capacity
        self.rowWidth = rowWidth
        keys = (0..<layers).map { _ in UnsafeMutablePointer<Float>.allocate(capacity: capacity * rowWidth) }
        values = (0..<layers).map { _ in UnsafeMutablePointer<Float>.allocate(capacity: capacity * rowWidth) }
    }

    deinit {
        for p in keys { p.deallocate() }
        for p in values { p.deallocate() }
    }

    @inlinable public func keyRow(layer: Int, position: Int) -> UnsafeMutablePointer<Float> {
        keysBase(layer) + position * rowWidth
    }

    @inlinable public func valueRow(layer: Int, position: Int) -> UnsafeMutablePointer<Float> {
        valuesBase(layer) + position * rowWidth
    }

    @usableFromInline func keysBase(_ layer: Int) -> UnsafeMutablePointer<Float> { keys[layer] }
    @usableFromInline func valuesBase(_ layer: Int) -> UnsafeMutablePointer<Float> { values[layer] }

    public func advance(by count: Int) {
        precondition(length + count <= capacity, "KV cache overflow")
        length += count
    }

    public func truncate(to newLength: Int) { length = min(length, max(0, newLength)) }
}
