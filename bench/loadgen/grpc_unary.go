package main

import (
	"context"
	"flag"
	"fmt"
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

// grpcUnary runs unary Enqueue calls, one message per call, from -clients concurrent clients, each
// with its own connection unless -conns is smaller (closed loop: a client sends its next call when
// the previous one is answered). Reports calls per second over the measured part and latency.
func grpcUnary(args []string) error {
	fs := flag.NewFlagSet("grpc-unary", flag.ExitOnError)
	addr := fs.String("addr", "", "host:port of the gRPC server")
	protoPath := fs.String("proto", "", "path of rankq.proto")
	service := fs.String("service", "RankQ", "service name")
	method := fs.String("method", "Enqueue", "unary method taking an EnqueueRequest")
	queue := fs.String("queue", "bench", "queue name")
	clients := fs.Int("clients", 50, "concurrent clients")
	conns := fs.Int("conns", 0, "connections the clients are spread over (0: one each)")
	size := fs.Int("payload-bytes", 100, "payload size")
	duration := fs.Duration("duration", 10*time.Second, "measured time")
	warmup := fs.Duration("warmup", 2*time.Second, "time before measuring")
	timeout := fs.Duration("timeout", 10*time.Second, "per-call timeout")
	fs.Parse(args)
	if err := loopbackOnly(*addr); err != nil {
		return err
	}
	comp := protocompile.Compiler{
		Resolver: protocompile.WithStandardImports(&protocompile.SourceResolver{ImportPaths: []string{filepath.Dir(*protoPath)}}),
	}
	files, err := comp.Compile(context.Background(), filepath.Base(*protoPath))
	if err != nil {
		return err
	}
	svc := files[0].Services().ByName(protoreflect.Name(*service))
	if svc == nil {
		return fmt.Errorf("service %s not in %s", *service, *protoPath)
	}
	m := svc.Methods().ByName(protoreflect.Name(*method))
	if m == nil || m.IsStreamingClient() || m.IsStreamingServer() {
		return fmt.Errorf("%s is not a unary method of %s", *method, *service)
	}
	full := fmt.Sprintf("/%s/%s", svc.FullName(), m.Name())
	in := m.Input()
	msgDesc := in.Fields().ByName("message").Message()
	msg := dynamicpb.NewMessage(msgDesc)
	msg.Set(msgDesc.Fields().ByName("payload"), protoreflect.ValueOfBytes([]byte(payload(*size))))
	msg.Set(msgDesc.Fields().ByName("content_type"), protoreflect.ValueOfString("application/json"))
	req := dynamicpb.NewMessage(in)
	req.Set(in.Fields().ByName("queue"), protoreflect.ValueOfString(*queue))
	req.Set(in.Fields().ByName("message"), protoreflect.ValueOfMessage(msg))

	if *conns <= 0 || *conns > *clients {
		*conns = *clients
	}
	ccs := make([]*grpc.ClientConn, *conns)
	for i := range ccs {
		cc, err := grpc.NewClient(*addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return err
		}
		defer cc.Close()
		ccs[i] = cc
	}
	total := *warmup + *duration
	base := authContext(context.Background())
	runCtx, stop := context.WithTimeout(base, total)
	defer stop()

	var done, errs atomic.Int64
	var firstErr atomic.Value
	var measuring atomic.Bool
	var latMu sync.Mutex
	var lat []time.Duration
	var wg sync.WaitGroup
	for c := 0; c < *clients; c++ {
		wg.Add(1)
		go func(cc *grpc.ClientConn) {
			defer wg.Done()
			var mine []time.Duration
			for runCtx.Err() == nil {
				ctx, cancel := context.WithTimeout(base, *timeout)
				t := time.Now()
				err := cc.Invoke(ctx, full, req, dynamicpb.NewMessage(m.Output()))
				cancel()
				if err != nil {
					if runCtx.Err() == nil {
						errs.Add(1)
						firstErr.CompareAndSwap(nil, err.Error())
						time.Sleep(10 * time.Millisecond)
					}
					continue
				}
				done.Add(1)
				if measuring.Load() {
					mine = append(mine, time.Since(t))
				}
			}
			latMu.Lock()
			lat = append(lat, mine...)
			latMu.Unlock()
		}(ccs[c%*conns])
	}
	time.Sleep(*warmup)
	measuring.Store(true)
	d0, t0 := done.Load(), time.Now()
	<-runCtx.Done()
	d1, secs := done.Load(), time.Since(t0).Seconds()
	wg.Wait()
	out := map[string]any{
		"clients": *clients, "conns": *conns, "seconds": secs, "calls": d1 - d0,
		"rate": float64(d1-d0) / secs, "errors": errs.Load(), "latency": summarize(lat),
	}
	if e := firstErr.Load(); e != nil {
		out["first_error"] = e
	}
	return emit(out)
}
