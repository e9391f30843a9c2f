// Sunburst: radial rays of random widths from a bright centre, modulated by noise.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = (fragCoord - iMouse.xy) / iResolution.y;
    float a = atan(uv.y, uv.x) / 6.2831 + 0.5;
    float r = length(uv);
    float rays = floor(8.0 + 40.0 * iParams[0].x);
    float ray = kd_noise(vec2(a * rays, iTime)) * kd_noise(vec2(a * rays * 0.5 + 3.0, iTime));
    float glow = exp(-r * (2.0 + 6.0 * iParams[0].y));
    float v = ray * (1.0 - 0.5 * iParams[0].z) + glow;
    fragColor = vec4(kd_palette(0.1 + 0.4 * v) * clamp(v * 1.5, 0.05, 1.0), 1.0);
}
