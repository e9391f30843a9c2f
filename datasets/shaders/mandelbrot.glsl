// Zooms into the Mandelbrot set near well-known boundary points; smooth iteration count colouring.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = (fragCoord - 0.5 * iResolution.xy) / iResolution.y;
    vec2 centres[4] = vec2[4](vec2(-0.745, 0.113), vec2(-0.1011, 0.9563), vec2(-1.25066, 0.02012), vec2(0.2818, 0.5308));
    vec2 centre = centres[int(iParams[0].x * 3.999)];
    float zoom = pow(10.0, -0.3 - 2.2 * iParams[0].y);
    vec2 c = centre + kd_rot(iTime) * uv * zoom * 2.5;
    vec2 z = vec2(0.0);
    float n = 0.0;
    for (int i = 0; i < 160; i++) {
        z = vec2(z.x * z.x - z.y * z.y, 2.0 * z.x * z.y) + c;
        if (dot(z, z) > 256.0) break;
        n += 1.0;
    }
    float s = n - log2(log2(dot(z, z))) + 4.0;
    vec3 col = n < 160.0 ? kd_palette(sqrt(s) * (0.3 + 0.5 * iParams[0].z)) : vec3(0.0);
    fragColor = vec4(col, 1.0);
}
