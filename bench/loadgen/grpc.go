package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bufbuild/protocompile"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/dynamicpb"
)

// enqueueProto holds what the stream needs from rankq.proto, compiled at run time so the tool
// follows the committed .proto without generated Go code.
type enqueueProto struct {
	method  string
	frame   protoreflect.MessageDescriptor // EnqueueStreamRequest when requests travel in frames, else nil
	request protoreflect.MessageDescriptor // EnqueueRequest
	acks    protoreflect.MessageDescriptor // EnqueueStreamResponse when acks travel in frames, else nil
	ack     protoreflect.MessageDescriptor // EnqueueAck
	message protoreflect.MessageDescriptor // NewMessage
}

// loadProto finds the stream method and its message types. Both shapes of the stream are
// understood: one EnqueueRequest per stream message, or frames with `repeated requests`
// answered by frames with `repeated acks`.
func loadProto(path, service, method string) (*enqueueProto, error) {
	comp := protocompile.Compiler{
		Resolver: protocompile.WithStandardImports(&protocompile.SourceResolver{ImportPaths: []string{filepath.Dir(path)}}),
	}
	files, err := comp.Compile(context.Background(), filepath.Base(path))
	if err != nil {
		return nil, err
	}
	svc := files[0].Services().ByName(protoreflect.Name(service))
	if svc == nil {
		return nil, fmt.Errorf("service %s not in %s", service, path)
	}
	m := svc.Methods().ByName(protoreflect.Name(method))
	if m == nil {
		return nil, fmt.Errorf("method %s not in service %s", method, service)
	}
	if !m.IsStreamingClient() || !m.IsStreamingServer() {
		return nil, fmt.Errorf("%s is not a bidirectional stream", method)
	}
	p := &enqueueProto{method: fmt.Sprintf("/%s/%s", svc.FullName(), m.Name()), request: m.Input(), ack: m.Output()}
	if f := p.request.Fields().ByName("requests"); f != nil && f.IsList() && f.Message() != nil {
		p.frame, p.request = p.request, f.Message()
	}
	if f := p.ack.Fields().ByName("acks"); f != nil && f.IsList() && f.Message() != nil {
		p.acks, p.ack = p.ack, f.Message()
	}
	msgField := p.request.Fields().ByName("message")
	if msgField == nil || p.request.Fields().ByName("ref") == nil || p.request.Fields().ByName("queue") == nil {
		return nil, fmt.Errorf("%s lacks queue/message/ref", p.request.FullName())
	}
	if p.ack.Fields().ByName("ref") == nil || p.ack.Fields().ByName("status") == nil {
		return nil, fmt.Errorf("%s lacks ref/status", p.ack.FullName())
	}
	p.message = msgField.Message()
	return p, nil
}

func (p *enqueueProto) newRequest(queue string, body []byte, contentType string, ref uint64) *dynamicpb.Message {
	msg := dynamicpb.NewMessage(p.message)
	msg.Set(p.message.Fields().ByName("payload"), protoreflect.ValueOfBytes(body))
	msg.Set(p.message.Fields().ByName("content_type"), protoreflect.ValueOfString(contentType))
	req := dynamicpb.NewMessage(p.request)
	if queue != "" {
		req.Set(p.request.Fields().ByName("queue"), protoreflect.ValueOfString(queue))
	}
	req.Set(p.request.Fields().ByName("message"), protoreflect.ValueOfMessage(msg))
	req.Set(p.request.Fields().ByName("ref"), protoreflect.ValueOfUint64(ref))
	return req
}

// wrap puts requests into one stream message: a frame, or the single request itself.
func (p *enqueueProto) wrap(reqs []*dynamicpb.Message) *dynamicpb.Message {
	if p.frame == nil {
		return reqs[0]
	}
	frame := dynamicpb.NewMessage(p.frame)
	list := frame.Mutable(p.frame.Fields().ByName("requests")).List()
	for _, r := range reqs {
		list.Append(protoreflect.ValueOfMessage(r))
	}
	return frame
}

// newReply is an empty stream answer; unwrap lists the acks it holds.
func (p *enqueueProto) newReply() *dynamicpb.Message {
	if p.acks != nil {
		return dynamicpb.NewMessage(p.acks)
	}
	return dynamicpb.NewMessage(p.ack)
}

func (p *enqueueProto) unwrap(reply *dynamicpb.Message) []protoreflect.Message {
	if p.acks == nil {
		return []protoreflect.Message{reply}
	}
	list := reply.Get(p.acks.Fields().ByName("acks")).List()
	out := make([]protoreflect.Message, list.Len())
	for i := range out {
		out[i] = list.Get(i).Message()
	}
	return out
}

// grpcStream runs EnqueueStream on several streams (spread over a few connections).
//
// Closed loop (rate 0): each stream keeps `window` requests unanswered and counts acks per second.
// When the stream carries frames, a frame holds whatever fits the window (closed loop) or falls due
// within -linger of its first request (open loop), up to -frame.
// Open loop (rate > 0): requests are sent at a constant total rate, shared by the streams, and latency runs from each request's scheduled send time to its ack.
func grpcStream(args []string) error {
	fs := flag.NewFlagSet("grpc-stream", flag.ExitOnError)
	addr := fs.String("addr", "", "host:port of the gRPC server")
	protoPath := fs.String("proto", "", "path of rankq.proto")
	service := fs.String("service", "RankQ", "service name")
	method := fs.String("method", "EnqueueStream", "method name")
	queue := fs.String("queue", "bench", "queue name")
	streams := fs.Int("streams", 8, "concurrent streams")
	conns := fs.Int("conns", 2, "connections the streams are spread over")
	window := fs.Int("window", 256, "unanswered requests per stream (closed loop)")
	rate := fs.Float64("rate", 0, "total requests per second; 0: closed loop")
	size := fs.Int("payload-bytes", 100, "payload size")
	contentType := fs.String("content-type", "application/json", "payload content type")
	duration := fs.Duration("duration", 10*time.Second, "measured time (open loop: whole run)")
	warmup := fs.Duration("warmup", 2*time.Second, "time before measuring")
	frame := fs.Int("frame", 100, "most requests per stream message, when the stream carries frames")
	linger := fs.Duration("linger", time.Millisecond, "open loop: how long a frame waits for more requests after its first is due")
	fs.Parse(args)
	if err := loopbackOnly(*addr); err != nil {
		return err
	}
	p, err := loadProto(*protoPath, *service, *method)
	if err != nil {
		return err
	}
	body := []byte(payload(*size))
	maxFrame := *frame
	if p.frame == nil || maxFrame < 1 {
		maxFrame = 1
	}
	refField := p.ack.Fields().ByName("ref")
	statusField := p.ack.Fields().ByName("status")
	detailField := p.ack.Fields().ByName("detail")

	ccs := make([]*grpc.ClientConn, *conns)
	for i := range ccs {
		cc, err := grpc.NewClient(*addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return err
		}
		defer cc.Close()
		ccs[i] = cc
	}
	desc := &grpc.StreamDesc{StreamName: *method, ServerStreams: true, ClientStreams: true}
	openLoop := *rate > 0
	total := *warmup + *duration
	if openLoop {
		total = *duration
	}
	ctx, cancel := context.WithTimeout(authContext(context.Background()), total+15*time.Second)
	defer cancel()
	runCtx, stopSending := context.WithTimeout(ctx, total)
	defer stopSending()

	var acked, refused, errs, sent, frames atomic.Int64
	var firstErr atomic.Value
	var latMu sync.Mutex
	var lat []time.Duration
	var start time.Time
	var ticks <-chan time.Time
	if openLoop {
		start = time.Now().Add(200 * time.Millisecond)
		ticks = schedule(runCtx, start, *rate, *duration, int(*rate*duration.Seconds())+1)
	}

	var wg sync.WaitGroup
	ready := make(chan struct{})
	for s := 0; s < *streams; s++ {
		st, err := ccs[s%*conns].NewStream(ctx, desc, p.method)
		if err != nil {
			return fmt.Errorf("open stream: %w", err)
		}
		credits := make(chan struct{}, *window)
		for i := 0; i < *window; i++ {
			credits <- struct{}{}
		}
		var sentAt sync.Map // ref -> scheduled time (open loop)
		wg.Add(2)
		go func(s int) { // sender
			defer wg.Done()
			defer st.CloseSend()
			<-ready
			ref := uint64(s) << 40
			first := true
			for {
				// One stream message holds every request that is due (open loop) or has room in
				// the window (closed loop) right now, up to -frame; without frames, one request.
				n := 0
				var due []time.Time
				if openLoop {
					at, ok := <-ticks
					if !ok {
						return
					}
					due = append(due, at)
					// Requests due within -linger of the first travel with it (it waits for them).
					wait := time.NewTimer(time.Until(at.Add(*linger)))
				more:
					for len(due) < maxFrame {
						select {
						case at, ok := <-ticks:
							if !ok {
								break more
							}
							due = append(due, at)
						case <-wait.C:
							break more
						}
					}
					wait.Stop()
					n = len(due)
				} else {
					select {
					case <-credits:
					case <-runCtx.Done():
						return
					}
					n = 1
				take:
					for n < maxFrame {
						select {
						case <-credits:
							n++
						default:
							break take
						}
					}
				}
				reqs := make([]*dynamicpb.Message, n)
				for i := range reqs {
					ref++
					q := ""
					if first {
						q, first = *queue, false // later requests reuse the stream's queue
					}
					if openLoop {
						sentAt.Store(ref, due[i])
					}
					reqs[i] = p.newRequest(q, body, *contentType, ref)
				}
				if err := st.SendMsg(p.wrap(reqs)); err != nil {
					if err != io.EOF {
						errs.Add(1)
						firstErr.CompareAndSwap(nil, err.Error())
					}
					return
				}
				sent.Add(int64(n))
				frames.Add(1)
			}
		}(s)
		go func() { // receiver
			defer wg.Done()
			for {
				reply := p.newReply()
				if err := st.RecvMsg(reply); err != nil {
					if err != io.EOF && runCtx.Err() == nil {
						errs.Add(1)
						firstErr.CompareAndSwap(nil, err.Error())
					}
					return
				}
				now := time.Now()
				for _, ack := range p.unwrap(reply) {
					if code := ack.Get(statusField).Int(); code != 0 {
						refused.Add(1)
						firstErr.CompareAndSwap(nil, fmt.Sprintf("refused %d: %s", code, ack.Get(detailField).String()))
					} else {
						acked.Add(1)
					}
					if openLoop {
						if v, ok := sentAt.LoadAndDelete(ack.Get(refField).Uint()); ok {
							at := v.(time.Time)
							if at.Sub(start) >= *warmup {
								latMu.Lock()
								lat = append(lat, now.Sub(at))
								latMu.Unlock()
							}
						}
					} else {
						credits <- struct{}{}
					}
				}
			}
		}()
	}
	close(ready)

	out := map[string]any{"streams": *streams, "window": *window}
	if openLoop {
		wg.Wait()
		elapsed := time.Since(start)
		out["rate"] = *rate
		out["sent"] = sent.Load()
		out["seconds"] = elapsed.Seconds()
		out["achieved_rate"] = float64(sent.Load()) / elapsed.Seconds()
		out["latency"] = summarize(lat)
	} else {
		time.Sleep(*warmup)
		a0, t0 := acked.Load(), time.Now()
		<-runCtx.Done()
		a1, secs := acked.Load(), time.Since(t0).Seconds()
		out["seconds"] = secs
		out["acked"] = a1 - a0
		out["rate"] = float64(a1-a0) / secs
		wg.Wait()
	}
	if frames.Load() > 0 {
		out["mean_frame"] = float64(sent.Load()) / float64(frames.Load())
	}
	out["refused"] = refused.Load()
	out["errors"] = errs.Load()
	if e := firstErr.Load(); e != nil {
		out["first_error"] = e
	}
	return emit(out)
}
