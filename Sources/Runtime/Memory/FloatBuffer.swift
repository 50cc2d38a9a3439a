/// A growable float buffer that keeps its memory between forward passes (work memory: a decode
/// step must not allocate).
public final class FloatBuffer {
    public private(set) var pointer: UnsafeMutablePointer<Float>
    public private(set) var count: Int

    public init(_ count: Int = 0) {
        self.count = max(count, 1)
        pointer = .allocate(capacity: self.count)
    }

    /// Makes room for `needed` floats; the contents are not kept when it grows.
    public func reserve(_ needed: Int) {
        if needed <= count { return }
        pointer.deallocate()
        count = needed
        pointer = .allocate(capacity: needed)
    }

    deinit { pointer.deallocate() }
}
